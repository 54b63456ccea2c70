-- Argo CD health check for ClusterNetwork (ferrite.dev/v1alpha1).
--
-- Install it as the argocd-cm key `resource.customizations.health.ferrite.dev_ClusterNetwork`
-- (docs/gitops.md). Argo CD runs it with the object in the global `obj` and shows the table
-- it returns. It runs in Argo CD's sandbox: Lua 5.1 syntax, the base and table libraries
-- only (no string, no math), so it concatenates with `..` and `tostring`.
--
-- The operator writes status.observedGeneration and the conditions Ready, Progressing and
-- Degraded; their types and reasons are the constants of crds/src/conditions.rs.
-- Tested against apiserver-shaped objects by e2e/tests/argo_health.rs.

local function condition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

-- "Reason: message", or whichever of the two the operator set.
local function explain(c)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  return reason
end

-- Ready=False for one of these reasons means "not yet", not "broken".
local function settling(reason)
  return reason == "Pending" or reason == "RollingOut"
end

local generation = obj.metadata.generation or 0
local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration < generation then
  return {
    status = "Progressing",
    message = "waiting for the operator to observe generation " .. tostring(generation),
  }
end

local ready = condition("Ready")
local progressing = condition("Progressing")
local degraded = condition("Degraded")
local rollingOut = progressing ~= nil and progressing.status == "True"

if degraded ~= nil and degraded.status == "True" then
  return { status = "Degraded", message = explain(degraded) }
end

if ready ~= nil and ready.status == "False" and not rollingOut and not settling(ready.reason) then
  return { status = "Degraded", message = explain(ready) }
end

if rollingOut then
  local message = progressing.message
  if message == nil or message == "" then
    message = explain(progressing)
  end
  return { status = "Progressing", message = message }
end

if ready ~= nil and ready.status == "True" then
  local message = tostring(status.nodesReady or 0) .. "/" .. tostring(status.nodesDesired or 0) .. " nodes ready"
  local details = {}
  if obj.spec ~= nil and obj.spec.routingMode ~= nil then
    table.insert(details, obj.spec.routingMode)
  end
  if status.mtu ~= nil then
    table.insert(details, "MTU " .. tostring(status.mtu))
  end
  if #details > 0 then
    message = message .. " (" .. table.concat(details, ", ") .. ")"
  end
  return { status = "Healthy", message = message }
end

if ready ~= nil then
  -- Ready=Unknown, or Ready=False while the first reconciliation or a rollout is under way.
  return { status = "Progressing", message = explain(ready) }
end

return { status = "Progressing", message = "waiting for the operator to report the Ready condition" }
