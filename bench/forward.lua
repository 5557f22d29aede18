-- wrk script: drive a forward proxy with absolute-form requests.
--
-- wrk has no proxy support, so wrk is pointed at the proxy's address and this
-- script rewrites the request target to the origin's absolute URL:
--
--   GET http://127.0.0.1:ORIGIN/small HTTP/1.1
--   Host: 127.0.0.1:ORIGIN
--
-- The origin URL comes from the environment (set by bench/run.py):
--   FERRYMAN_BENCH_TARGET=http://127.0.0.1:ORIGIN/small
--
-- Setting wrk.path (instead of defining request()) keeps wrk's request static:
-- wrk builds it once with wrk.format(nil, target) and never calls into Lua per
-- request, so the load generator costs the same as in the direct scenarios.
-- Extra headers given with -H (e.g. "Connection: close") are kept.

local target = os.getenv("FERRYMAN_BENCH_TARGET")
if target == nil or target == "" then
  error("FERRYMAN_BENCH_TARGET is not set (expected http://127.0.0.1:PORT/path)")
end

local authority = target:match("^%a+://([^/]+)")
if authority == nil then
  error("FERRYMAN_BENCH_TARGET is not an absolute http URL: " .. target)
end

wrk.path = target
wrk.headers["Host"] = authority
