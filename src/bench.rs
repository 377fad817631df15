//! End-to-end benchmark (`zaya bench`): prompt/decode throughput, memory, graph size, and the memory-bandwidth bound of one decode token.
