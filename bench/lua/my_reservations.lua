-- Signed-in customers look at their reservations and the events they are for.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
local common = require("common")

local body = common.request_body("my_reservations")
local tokens

function init(args)
  tokens = common.lines("customer_tokens.txt")
  math.randomseed(thread_number)
end

function request()
  return common.post(body, tokens[math.random(#tokens)])
end
