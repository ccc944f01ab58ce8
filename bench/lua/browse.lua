-- Anonymous visitors browse the first page of events.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
local common = require("common")

wrk.method = "POST"
wrk.body = common.browse
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
