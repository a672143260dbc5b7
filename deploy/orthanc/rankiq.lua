-- RankIQ push mode for Orthanc: when an MR series becomes stable (no new instance for
-- "StableAge" seconds), score it with `rankiq qa --dicomweb` and store the TID 1500 SR and the
-- saliency parametric map back into this Orthanc (STOW-RS).
--
-- Environment of the Orthanc process (never put credentials in this file):
--   RANKIQ_BIN          the rankiq executable (default: rankiq on PATH)
--   RANKIQ_DICOMWEB     this Orthanc's DICOMweb root (default: http://127.0.0.1:8042/dicom-web)
--   RANKIQ_PUSH_OUT     where each series' QA run writes its reports (default:
--                       /var/lib/rankiq/push); one folder per Orthanc series id
--   RANKIQ_WRITE_BACK   what to store back (default: sr,saliency)
--   RANKIQ_DICOMWEB_USER / RANKIQ_DICOMWEB_PASSWORD (or RANKIQ_DICOMWEB_TOKEN): an Orthanc
--                       user allowed to read and store, inherited by rankiq

local function setting(name, default)
  local value = os.getenv(name)
  if value == nil or value == '' then return default end
  return value
end

-- a UID is digits and dots: anything else is not passed to a shell
local function safe_uid(uid)
  return uid ~= nil and string.len(uid) <= 64 and string.match(uid, '^[0-9.]+$') ~= nil
end

function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] ~= 'MR' then
    return  -- RankIQ's own results (SR, OT) and other modalities are left alone
  end
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local study = ParseJson(RestApiGet('/studies/' .. series['ParentStudy']))
  local studyUid = study['MainDicomTags']['StudyInstanceUID']
  local seriesUid = tags['SeriesInstanceUID']
  if not safe_uid(studyUid) or not safe_uid(seriesUid) or
      not string.match(seriesId, '^[0-9a-f-]+$') then
    print('rankiq: series ' .. seriesId .. ' skipped (unexpected identifiers)')
    return
  end
  local out = setting('RANKIQ_PUSH_OUT', '/var/lib/rankiq/push') .. '/' .. seriesId
  local cmd = setting('RANKIQ_BIN', 'rankiq') .. ' qa --no-progress --resume' ..
      ' --dicomweb ' .. setting('RANKIQ_DICOMWEB', 'http://127.0.0.1:8042/dicom-web') ..
      ' --study ' .. studyUid .. ' --series ' .. seriesUid ..
      ' --write-back ' .. setting('RANKIQ_WRITE_BACK', 'sr,saliency') ..
      ' --out ' .. out .. ' > ' .. out .. '.log 2>&1 &'
  os.execute('mkdir -p ' .. out)
  -- in the background: Orthanc's Lua callbacks run one at a time and must return quickly
  os.execute(cmd)
  print('rankiq: scoring series ' .. seriesId)
end
