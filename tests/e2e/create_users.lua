-- wrk script: POST /api/v1/users with a new email each time, and print
-- "CREATED <id>" for every 201 received. Environment: API_KEY, RUN (a
-- tag that keeps the emails of different runs apart).
local n = 0
local run = os.getenv("RUN") or "run"
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. (os.getenv("API_KEY") or ""),
}

request = function()
  n = n + 1
  local body = string.format('{"name":"Load %d","email":"load-%s-%d@example.com"}', n, run, n)
  return wrk.format("POST", "/api/v1/users", headers, body)
end

response = function(status, hdrs, body)
  if status == 201 then
    local id = body:match('"id":"([0-9a-f%-]+)"')
    io.write("CREATED ", id or "?", "\n")
  end
end
