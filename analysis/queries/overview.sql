-- Overview: how much of the study exists in this results root (one row per kind of result).
-- Used by: the report's overview section. Reads: models, predictions, pairs, transfers, hparams, failures.
-- Columns: item, n (a count), source (the files it comes from).
SELECT 'models' AS item, count(*) AS n, 'zoo/models/*.parquet' AS source FROM models
UNION ALL
SELECT 'models with predictions', count(DISTINCT model_id), 'predictions/*.parquet' FROM predictions
UNION ALL
SELECT 'scored pairs', count(*), 'scores/pairs.parquet' FROM pairs
UNION ALL
SELECT 'single-teacher transfers', count(*), 'transfers/*/summary.parquet' FROM transfers WHERE mode = 'single'
UNION ALL
SELECT 'multi-teacher transfers', count(*), 'transfers/*/summary.parquet' FROM transfers WHERE mode <> 'single'
UNION ALL
SELECT 'hyper-parameter grid runs', count(*), 'hparams/*.parquet' FROM hparams
UNION ALL
SELECT 'failed jobs', count(DISTINCT job_id), 'failures/*.parquet' FROM failures;
