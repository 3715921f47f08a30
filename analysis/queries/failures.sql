-- Failures: every failed job with its stage, error and attempt count, most recent first.
-- Used by: the report's overview section. Reads: failures.
SELECT job_id, stage, error, attempts, failed_at
FROM failures
ORDER BY failed_at DESC, job_id;
