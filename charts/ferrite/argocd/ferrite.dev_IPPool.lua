-- Argo CD health check for IPPool (ferrite.dev/v1alpha1).
--
-- Install it as the argocd-cm key `resource.customizations.health.ferrite.dev_IPPool`
-- (docs/gitops.md). Argo CD runs it with the object in the global `obj` and shows the table
-- it returns. It runs in Argo CD's sandbox: Lua 5.1 syntax, the base and table libraries
-- only (no string, no math), so it concatenates with `..` and `tostring`.
--
-- The operator writes status.observedGeneration, status.usage and the Ready condition (reason
-- Overlap when the pool collides with another pool, the service CIDR or node addresses; reason
-- InUse while a deletion waits for blocks that nodes still use); types and reasons are the
-- constants of crds/src/conditions.rs. Tested by e2e/tests/argo_health.rs.

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

local function conditionWithReason(reason)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.reason == reason then
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

local function usage()
  local u = obj.status.usage
  if u == nil then
    return "no usage reported yet"
  end
  return tostring(u.allocated or 0) .. "/" .. tostring(u.total or 0) .. " addresses in "
    .. tostring(u.blocks or 0) .. " blocks"
end

-- NB: checked before the generation: the apiserver bumps metadata.generation when it sets
-- deletionTimestamp, and a pool that is going away is progressing whatever else it reports.
if obj.metadata.deletionTimestamp ~= nil then
  local message = "being deleted"
  local finalizers = obj.metadata.finalizers
  if finalizers ~= nil and #finalizers > 0 then
    message = message .. ", held by " .. table.concat(finalizers, ", ")
  end
  local why = conditionWithReason("InUse") or condition("Ready")
  if why ~= nil then
    message = message .. ": " .. explain(why)
  end
  return { status = "Progressing", message = message }
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

if ready ~= nil and ready.status == "False" and ready.reason == "Overlap" then
  return { status = "Degraded", message = explain(ready) }
end

-- A disabled pool hands out no new addresses on purpose: Ready=False for that reason is its
-- desired state, not a fault. Any other reason still is one.
local disabledByReason = ready ~= nil and ready.reason == "Disabled"
local disabled = disabledByReason or (obj.spec ~= nil and obj.spec.disabled == true)

if ready ~= nil and ready.status == "False" and not disabledByReason and not rollingOut and not settling(ready.reason) then
  return { status = "Degraded", message = explain(ready) }
end

if rollingOut then
  local message = progressing.message
  if message == nil or message == "" then
    message = explain(progressing)
  end
  return { status = "Progressing", message = message }
end

if ready ~= nil and (ready.status == "True" or (disabledByReason and ready.status == "False")) then
  local message = usage()
  if disabled then
    message = message .. "; disabled: hands out no new addresses"
  end
  return { status = "Healthy", message = message }
end

if ready ~= nil then
  -- Ready=Unknown, or Ready=False while the first reconciliation is under way.
  return { status = "Progressing", message = explain(ready) }
end

return { status = "Progressing", message = "waiting for the operator to report the Ready condition" }
