"""datetime.now().strftime(format), as transformers' strftime_now. stdin: {"format": str}."""
import json
import sys
from datetime import datetime

json.dump(datetime.now().strftime(json.load(sys.stdin)["format"]), sys.stdout)
