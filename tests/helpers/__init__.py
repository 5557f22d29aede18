"""Test helpers, one module per job:

- `wait`: the one bounded wait (`wait_for`, `wait_for_async`, and over it `wait_port`,
  `wait_log`, `wait_text`); nothing sleeps to synchronise.
- `rawhttp`: the raw-socket HTTP/1 client (`RawClient`, `connect`, `read_response`,
  `exchange`, `get`) and its one response parser; `curl`.
- `origin`: the recording, scripted origin (`serve(handler)` and its ready-made handlers,
  `ScriptedOrigin`, `Backend`), a websocket echo server and a bulk source/sink.
- `procs`: the ferryman launcher (`launch`, `run_config`, `run_ferryman`, `run_reverse`,
  `ferryman_cli`), nginx, and measures of a process.
- `cache_integ`: Cache-Status parsing and the config of a caching ferryman.
"""
