-- Shared by the scenarios: the prepared data, GraphQL requests, and the tally of answers.
-- wrk gives each thread its own Lua state; setup() runs in the main state and done() reads
-- every thread's counters back from there.
local common = {}

local work = os.getenv("BENCH_WORK") or error("BENCH_WORK is not set")

function common.lines(name)
  local lines = {}
  for line in io.lines(work .. "/" .. name) do
    lines[#lines + 1] = line
  end
  return lines
end

-- A request body kept in <name>.json, shared with bench/run.py: it asks the browse request
-- once for the HTTP ceiling and runs the my-reservations document for the GraphQL floor.
function common.request_body(name)
  local file = assert(io.open((os.getenv("BENCH_LUA") or ".") .. "/" .. name .. ".json"))
  local body = file:read("*a"):gsub("%s+$", "")
  file:close()
  return body
end

common.browse = common.request_body("browse")

-- The hot sales' customers (line n of hot_tokens.txt is the token of bench-fan-n), and a
-- function giving the next one's token: threads take disjoint runs (up to 4 threads).
function common.fans()
  local tokens = common.lines("hot_tokens.txt")
  local next_token = (thread_number - 1) * math.floor(#tokens / 4)
  return tokens, function()
    next_token = next_token % #tokens + 1
    return tokens[next_token]
  end
end

-- `fields`: what to read back from the reservation (default "id quantity").
function common.reserve(event_id, quantity, fields)
  return '{"query": "mutation Reserve($input: CreateReservationInput!) '
    .. '{ createReservation(input: $input) { __typename ... on ReservationPayload '
    .. '{ reservation { ' .. (fields or "id quantity") .. ' } event { ticketsAvailable } } } }", '
    .. '"variables": {"input": {"eventId": "' .. event_id .. '", "quantity": ' .. quantity .. '}}}'
end

function common.post(body, token)
  local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json" }
  if token then
    headers["Authorization"] = "Bearer " .. token
  end
  return wrk.format("POST", "/graphql", headers, body)
end

-- Typed results that a busy sale legitimately answers: not failures of the service.
local expected_refusals = {
  NotEnoughTickets = true,
  CustomerLimitReached = true,
  InvalidQuantity = true,
  ReservationCancelled = true,
}

successes, refusals, bad_status, graphql_errors, unexpected_results = 0, 0, 0, 0, 0

-- Every answer must be a 200 without top-level GraphQL errors; a mutation's result must be
-- a payload or an expected refusal.
function response(status, headers, body)
  if status ~= 200 then
    bad_status = bad_status + 1
  elseif string.find(body, '"errors"', 1, true) then
    graphql_errors = graphql_errors + 1
  else
    local typename = string.match(body, '"__typename":%s*"(%w+)"')
    if typename == nil or typename == "ReservationPayload" then
      successes = successes + 1
    elseif expected_refusals[typename] then
      refusals = refusals + 1
    else
      unexpected_results = unexpected_results + 1
    end
  end
end

local threads = {}
-- The globals each thread counts in, reported by done(); a script may add its own.
common.counters = { "successes", "refusals", "bad_status", "graphql_errors", "unexpected_results" }

function setup(thread)
  thread:set("thread_number", #threads + 1)
  threads[#threads + 1] = thread
end

-- One JSON line for bench/run.py, after wrk's own report.
function done(summary, latency, requests)
  local counted = ""
  for _, name in ipairs(common.counters) do
    local total = 0
    for _, thread in ipairs(threads) do
      total = total + (thread:get(name) or 0)
    end
    counted = counted .. string.format(', "%s": %d', name, total)
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
      .. '"transport_errors": %d%s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.timeout, counted
  ))
end

return common
