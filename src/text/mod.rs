//! Text in and out of the model: the tokenizer ([`tokenizer`]), its streaming detokenizer and stop
//! matcher ([`stream`]), chat templates with their Python-compatibility filters ([`chat`]), and the tool
//! calls a chat template's syntax produces in generated text ([`tool_calls`]).
pub mod chat;
pub mod stream;
pub mod tokenizer;
pub mod tool_calls;
