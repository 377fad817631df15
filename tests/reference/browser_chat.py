"""Drives the chat page of a running `zaya serve` in headless Chromium (Debian's chromium and
chromium-driver, through Selenium) for tests/web_chat.rs.

Usage: browser_chat.py BASE_URL [SCREENSHOT_DIR]. Prints one JSON object with what it saw:
a streamed answer, a stopped long answer and the next answer after it, the request the thinking
toggle sends and the reasoning it folds away, the conversation after a reload, untrusted markup
shown as text, a server error shown in the page, and Enter / Shift+Enter behaviour.
"""
import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.keys import Keys

base = sys.argv[1]
shots = sys.argv[2] if len(sys.argv) > 2 else None

opts = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,800"]:
    opts.add_argument(a)
opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=opts)
report = {}


def wait(cond, what, timeout=30.0):
    t = time.time()
    while time.time() - t < timeout:
        try:
            v = cond()
        except StaleElementReferenceException:  # re-rendered while streaming
            v = None
        if v:
            return v
        time.sleep(0.05)
    # say what the page shows, so that a failure names its cause (an error box, a request never sent)
    try:
        page = driver.execute_script(
            "return 'requests sent: ' + (window.__bodies ? window.__bodies.length : '?') + '; stop '"
            " + (document.getElementById('stop').disabled ? 'disabled' : 'enabled') + '; messages: '"
            " + Array.from(document.querySelectorAll('#messages .msg')).map("
            "   (m) => m.className + ': ' + m.innerText.slice(0, 120).replace(/\\s+/g, ' ')).join(' || ')")
    except Exception as e:  # the page itself is gone
        page = f"(page unreadable: {e})"
    raise SystemExit(f"timed out waiting for {what}; {page}")


def boxes(cls):
    return driver.find_elements(By.CSS_SELECTOR, f"#messages .msg.{cls}")


def idle():
    return driver.find_element(By.ID, "stop").get_attribute("disabled") is not None


def set_value(id_, value):
    el = driver.find_element(By.ID, id_)
    driver.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change'));", el, str(value))


try:
    driver.get(base + "/")
    wait(lambda: driver.find_element(By.ID, "model-name").text, "the model name")
    report["model_label"] = driver.find_element(By.ID, "model-name").text
    # record request bodies the page sends
    # (and, while window.__force is set, force one token id through logit_bias: the long answer below
    # must not end by EOS before Stop is pressed, whatever the random weights say)
    driver.execute_script(
        "window.__bodies = []; const f = window.fetch; window.fetch = (u, o) => {"
        " if (o && o.body) { const b = JSON.parse(o.body); window.__bodies.push(b);"
        "   if (window.__force) { b.logit_bias = {'100': 100}; o = Object.assign({}, o, {body: JSON.stringify(b)}); } }"
        " return f(u, o); };"
    )
    set_value("max-tokens", 12)
    set_value("temperature", 0)

    # 1. Enter sends; a streamed answer appears with its figures
    inp = driver.find_element(By.ID, "input")
    inp.send_keys("Hello")
    inp.send_keys(Keys.SHIFT, Keys.ENTER)
    report["shift_enter_keeps_text"] = inp.get_attribute("value") == "Hello\n"
    inp.send_keys("there")
    inp.send_keys(Keys.ENTER)
    wait(lambda: len(boxes("assistant")) == 1 and idle(), "the first answer")
    a = boxes("assistant")[0]
    report["user_text"] = boxes("user")[0].text
    report["answer_text"] = a.find_element(By.CSS_SELECTOR, ".answer").text
    report["answer_stats"] = a.find_element(By.CSS_SELECTOR, ".stats").text
    report["first_request"] = driver.execute_script("return window.__bodies[0]")

    # 2. a long answer, stopped while it streams; the next message is answered (the slot is free)
    set_value("max-tokens", 100000)
    driver.execute_script("window.__force = true")
    inp.send_keys("Write a very long story")
    inp.send_keys(Keys.ENTER)
    # (checked in one script call: the answer's nodes are replaced as each piece arrives)
    wait(lambda: driver.execute_script(
        "const a = document.querySelectorAll('#messages .msg.assistant');"
        "return a.length == 2 && a[1].querySelector('.answer').textContent.length > 20"), "the long answer to stream")
    # the composer stays in view while the answer grows (the conversation scrolls, not the page)
    report["page_scroll_while_streaming"] = driver.execute_script("return window.scrollY")
    driver.find_element(By.ID, "stop").click()
    wait(idle, "the stop", timeout=5.0)
    driver.execute_script("window.__force = false")
    report["stopped_stats"] = boxes("assistant")[1].find_element(By.CSS_SELECTOR, ".stats").text
    set_value("max-tokens", 6)
    inp.send_keys("And now?")
    inp.send_keys(Keys.ENTER)
    wait(lambda: (len(boxes("assistant")) == 3 or len(boxes("error")) > 0) and idle(), "the answer after the stop")
    report["after_stop_errors"] = [e.text for e in boxes("error")]
    report["after_stop_answers"] = len(boxes("assistant"))

    # 3. thinking on: the request asks for it; reasoning is folded apart from the answer
    driver.find_element(By.CSS_SELECTOR, "label[for=thinking]").click()
    inp.send_keys("Think first")
    inp.send_keys(Keys.ENTER)
    wait(lambda: (len(boxes("assistant")) == 4 or len(boxes("error")) > len(report["after_stop_errors"])) and idle(),
         "the thinking answer")
    report["thinking_errors"] = [e.text for e in boxes("error")]
    bodies = driver.execute_script("return window.__bodies")
    report["thinking_flag"] = bodies[-1]["chat_template_kwargs"]["enable_thinking"]
    driver.execute_script(
        "const b = document.createElement('div'); b.id = 'probe'; document.body.appendChild(b);"
        "renderAnswer(b, {content: 'The answer.', reasoning: 'Some reasoning.', stats: null});"
    )
    probe = driver.find_element(By.ID, "probe")
    details = probe.find_element(By.CSS_SELECTOR, "details.reasoning")
    report["reasoning_folded"] = details.get_attribute("open") is None
    report["reasoning_answer"] = probe.find_element(By.CSS_SELECTOR, ".answer").text
    driver.execute_script("document.getElementById('probe').remove()")

    # 4. reload: the conversation is still there
    before = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#messages .msg")]
    driver.refresh()
    wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#messages .msg")) == len(before), "the restored conversation")
    after = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#messages .msg")]
    report["restored"] = [x.split("\n")[-1] for x in after] == [x.split("\n")[-1] for x in before]
    report["restored_count"] = len(after)
    report["thinking_restored"] = driver.find_element(By.ID, "thinking").is_selected()

    if shots:
        driver.save_screenshot(os.path.join(shots, "chat-wide.png"))
        driver.set_window_size(400, 800)
        time.sleep(0.3)
        driver.save_screenshot(os.path.join(shots, "chat-narrow.png"))
        driver.set_window_size(1200, 800)

    # 5. untrusted markup in an answer renders as text (stored answer, then reload)
    evil = "Look: <script>window.__xss = 1</script> <img src=x onerror=\"window.__xss = 2\"> **bold** `<b>code</b>`\n```\n<img src=y onerror=\"window.__xss = 3\">\n```"
    driver.execute_script(
        "const s = JSON.parse(localStorage.getItem('zaya-chat-v1'));"
        "s.messages.push({role: 'assistant', content: arguments[0], reasoning: '<img src=z onerror=\"window.__xss = 4\">', stats: null});"
        "localStorage.setItem('zaya-chat-v1', JSON.stringify(s));", evil)
    driver.refresh()
    time.sleep(0.5)
    last = boxes("assistant")[-1]
    report["xss_flag"] = driver.execute_script("return window.__xss === undefined ? null : window.__xss")
    report["injected_elements"] = len(last.find_elements(By.CSS_SELECTOR, ".answer img, .answer script, .answer b, details img"))
    report["markup_text"] = last.find_element(By.CSS_SELECTOR, ".answer").text
    report["bold_rendered"] = len(last.find_elements(By.CSS_SELECTOR, ".answer strong")) == 1
    report["code_blocks"] = len(last.find_elements(By.CSS_SELECTOR, ".answer pre button.copy"))

    # 6. a server error (prompt over the context) is shown in the page
    driver.find_element(By.ID, "new-chat").click()
    set_value("max-tokens", 4)
    driver.execute_script("document.getElementById('input').value = arguments[0]", "word " * 3000)
    inp = driver.find_element(By.ID, "input")  # the page was reloaded
    inp.send_keys(Keys.ENTER)
    wait(lambda: len(boxes("error")) > 0 and idle(), "the error message")
    report["error_text"] = boxes("error")[-1].text
    report["new_chat_cleared"] = len(boxes("assistant")) == 0
finally:
    driver.quit()

print(json.dumps(report))
