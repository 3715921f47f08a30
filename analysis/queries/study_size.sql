-- Study size: how many eval samples, pairs, transfers and seeds the results stand on (one row).
-- Used by: the report's Claims section. n_eval_min/max: eval samples per transfer (transfers, all study
-- parts); n_samples_min/max: eval samples per scored pair; n_trained_pairs / n_random_pairs: scored pairs
-- with a trained / random teacher; n_single_transfers: single-teacher transfer runs (study_part
-- 'transfer'), over n_transfer_pairs distinct (student, teacher) pairs and n_methods methods;
-- seeds_min/max: runs per (method, student, teacher, hparams) group; n_multi_teacher: multi-teacher runs.
-- Reads: pairs, transfers.
WITH single AS (
    SELECT * FROM paper_transfers WHERE study_part = 'transfer' AND mode = 'single'
),
seeds AS (
    SELECT count(*) AS k
    FROM single
    GROUP BY method_key(method, hparams_json), student, teacher, hparams_json
)
SELECT
    (SELECT min(n_eval) FROM paper_transfers)                                             AS n_eval_min,
    (SELECT max(n_eval) FROM paper_transfers)                                             AS n_eval_max,
    (SELECT min(n_samples) FROM pairs)                                              AS n_samples_min,
    (SELECT max(n_samples) FROM pairs)                                              AS n_samples_max,
    (SELECT count(*) FROM pairs WHERE NOT teacher_is_random AND teacher <> student) AS n_trained_pairs,
    (SELECT count(*) FROM pairs WHERE teacher_is_random)                            AS n_random_pairs,
    (SELECT count(*) FROM single)                                                   AS n_single_transfers,
    (SELECT count(*) FROM (SELECT DISTINCT student, teacher FROM single))           AS n_transfer_pairs,
    (SELECT count(DISTINCT method_key(method, hparams_json)) FROM single)           AS n_methods,
    (SELECT min(k) FROM seeds)                                                      AS seeds_min,
    (SELECT max(k) FROM seeds)                                                      AS seeds_max,
    (SELECT count(*) FROM paper_transfers WHERE study_part = 'multi_teacher' AND mode <> 'single') AS n_multi_teacher;
