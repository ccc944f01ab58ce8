-- A sale in full swing over all events: 85% browse, 10% reserve, 4% change, 1% cancel.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
local common = require("common")

local update = '{"query": "mutation Change($input: UpdateReservationInput!) '
  .. '{ updateReservation(input: $input) { __typename ... on ReservationPayload '
  .. '{ reservation { quantity } event { ticketsAvailable } } } }", "variables": {"input": '
  .. '{"reservationId": "%s", "operation": "%s", "quantity": 1}}}'
local cancel = '{"query": "mutation Cancel($input: CancelReservationInput!) '
  .. '{ cancelReservation(input: $input) { __typename ... on ReservationPayload '
  .. '{ reservation { status } } } }", "variables": {"input": {"reservationId": "%s"}}}'
local events, tokens, reservations

function init(args)
  events = common.lines("event_ids.txt")
  tokens = common.lines("customer_tokens.txt")
  -- "<customer number> <reservation id>": reservations made while preparing the data.
  reservations = common.lines("reservations.txt")
  math.randomseed(thread_number)
end

local function some_reservation()
  local customer, id = string.match(reservations[math.random(#reservations)], "(%d+) (%S+)")
  return tokens[tonumber(customer)], id
end

function request()
  local roll = math.random(100)
  if roll <= 85 then
    return common.post(common.browse)
  elseif roll <= 95 then
    local body = common.reserve(events[math.random(#events)], math.random(2))
    return common.post(body, tokens[math.random(#tokens)])
  elseif roll <= 99 then
    local token, id = some_reservation()
    local operation = math.random(2) == 1 and "INCREASE" or "DECREASE"
    return common.post(string.format(update, id, operation), token)
  else
    local token, id = some_reservation()
    return common.post(string.format(cancel, id), token)
  end
end
