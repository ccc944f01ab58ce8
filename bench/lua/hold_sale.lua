-- The sale opens on an event with a hold time: distinct customers each hold 1 or 2 tickets,
-- then confirm their hold, as after paying. wrk doesn't say which connection an answer came
-- on, so each thread queues the holds it sees made, and its next request confirms the oldest.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
local common = require("common")

local confirm = '{"query": "mutation Confirm($input: ConfirmReservationInput!) '
  .. '{ confirmReservation(input: $input) { __typename ... on ReservationPayload '
  .. '{ reservation { status } } } }", "variables": {"input": {"reservationId": "%s"}}}'
local hold_event, tokens, next_fan
local sent = 0
local held, first, last = {}, 1, 0 -- the queue of holds to confirm: { id, fan number }

confirmed = 0
table.insert(common.counters, "confirmed")

function init(args)
  hold_event = common.lines("hold_event_id.txt")[1]
  tokens, next_fan = common.fans()
end

function request()
  if first <= last then
    local hold = held[first]
    held[first], first = nil, first + 1
    return common.post(string.format(confirm, hold[1]), tokens[hold[2]])
  end
  sent = sent + 1
  return common.post(common.reserve(hold_event, 1 + sent % 2, "id customer"), next_fan())
end

local tally = response

function response(status, headers, body)
  tally(status, headers, body)
  if status ~= 200 then
    return
  end
  local id, fan = string.match(body, '"id":%s*"([^"]+)",%s*"customer":%s*"bench%-fan%-(%d+)"')
  if id then
    last = last + 1
    held[last] = { id, tonumber(fan) }
  elseif string.find(body, '"status":%s*"ACTIVE"') then
    confirmed = confirmed + 1
  end
end
