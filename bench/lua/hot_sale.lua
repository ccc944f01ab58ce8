-- The sale opens: distinct customers each reserve 1 or 2 tickets of the one hot event.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
local common = require("common")

local hot_event, tokens, next_token
local sent = 0

function init(args)
  hot_event = common.lines("event_ids.txt")[1]
  tokens = common.lines("hot_tokens.txt")
  -- Threads take disjoint runs of customers (up to 4 threads).
  next_token = (thread_number - 1) * math.floor(#tokens / 4)
end

function request()
  sent = sent + 1
  next_token = next_token % #tokens + 1
  return common.post(common.reserve(hot_event, 1 + sent % 2), tokens[next_token])
end
