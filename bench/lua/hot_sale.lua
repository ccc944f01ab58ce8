-- The sale opens: distinct customers each reserve 1 or 2 tickets of the one hot event.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
local common = require("common")

local hot_event, next_fan
local sent = 0

function init(args)
  hot_event = common.lines("event_ids.txt")[1]
  next_fan = select(2, common.fans())
end

function request()
  sent = sent + 1
  return common.post(common.reserve(hot_event, 1 + sent % 2), next_fan())
end
