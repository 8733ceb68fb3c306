-- Argo CD health of an appidentity.dev AppIdentity, read from the conditions the operator
-- writes (the kstatus conventions): Stalled -> Degraded, Reconciling -> Progressing,
-- Ready=True -> Healthy, Ready=False with reason ScheduleInactive -> Suspended (outside its
-- schedule window the identity has, by design, no bindings and no token). A status that does
-- not describe the current generation is Progressing, whatever it says.
local hs = {status = "Progressing", message = "Waiting for the operator to report"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local found = {}
for _, condition in ipairs(obj.status.conditions) do
  found[condition.type] = condition
end
local function describe(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end
if found.Stalled ~= nil and found.Stalled.status == "True" then
  return {status = "Degraded", message = describe(found.Stalled)}
end
if found.Reconciling ~= nil and found.Reconciling.status == "True" then
  return {status = "Progressing", message = describe(found.Reconciling)}
end
local ready = found.Ready
if ready == nil then
  return hs
end
if ready.status == "True" then
  return {status = "Healthy", message = describe(ready)}
end
if ready.reason == "ScheduleInactive" then
  return {status = "Suspended", message = describe(ready)}
end
return {status = "Progressing", message = describe(ready)}
