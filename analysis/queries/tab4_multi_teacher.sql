-- Table 4: multi-teacher transfer against the single teachers it combines.
-- One row per (student, method, set of teachers) that has a multi-teacher run. single_*: mean / min / max
-- delta_last of single-teacher transfers of the same student and method from each teacher in the set
-- (runs averaged per teacher). sequential_pp / parallel_pp / soup_pp: delta_last of the multi-teacher
-- runs of that mode (mean over runs, e.g. several orders or seeds; n_* counts them). beats_best_single:
-- sequential > single_max. Deltas in percentage points. Reads: transfers.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH multi AS (
    SELECT
        method_key(method, hparams_json) AS method,
        student,
        list_sort(teachers)              AS teacher_set,
        mode,
        avg(delta_last)                  AS delta_last,
        count(*)                         AS n_runs
    FROM transfers
    WHERE study_part = 'multi_teacher' AND mode IN ('sequential', 'parallel', 'soup')
    GROUP BY ALL
),
sets AS (
    SELECT DISTINCT method, student, teacher_set FROM multi
),
single AS (
    SELECT s.method, s.student, s.teacher_set, t.teacher, avg(t.delta_last) AS delta_last
    FROM sets s
    JOIN transfers t
      ON t.study_part = 'transfer' AND t.mode = 'single'
     AND t.student = s.student
     AND method_key(t.method, t.hparams_json) = s.method
     AND list_contains(s.teacher_set, t.teacher)
    GROUP BY ALL
),
single_stats AS (
    SELECT method, student, teacher_set,
           count(*) AS n_single, avg(delta_last) AS mean_d, min(delta_last) AS min_d, max(delta_last) AS max_d
    FROM single
    GROUP BY ALL
),
modes AS (
    SELECT
        method, student, teacher_set,
        max(delta_last) FILTER (WHERE mode = 'sequential') AS seq_d,
        max(n_runs)     FILTER (WHERE mode = 'sequential') AS seq_n,
        max(delta_last) FILTER (WHERE mode = 'parallel')   AS par_d,
        max(n_runs)     FILTER (WHERE mode = 'parallel')   AS par_n,
        max(delta_last) FILTER (WHERE mode = 'soup')       AS soup_d,
        max(n_runs)     FILTER (WHERE mode = 'soup')       AS soup_n
    FROM multi
    GROUP BY ALL
)
SELECT
    m.student,
    m.method,
    array_to_string(m.teacher_set, ' + ') AS teachers,
    coalesce(s.n_single, 0)               AS n_single,
    100 * s.mean_d                        AS single_mean_pp,
    100 * s.min_d                         AS single_min_pp,
    100 * s.max_d                         AS single_max_pp,
    100 * m.seq_d                         AS sequential_pp,
    100 * m.par_d                         AS parallel_pp,
    100 * m.soup_d                        AS soup_pp,
    coalesce(m.seq_n, 0)                  AS n_sequential,
    coalesce(m.par_n, 0)                  AS n_parallel,
    coalesce(m.soup_n, 0)                 AS n_soup,
    m.seq_d > s.max_d                     AS beats_best_single
FROM modes m
LEFT JOIN single_stats s
  ON s.method = m.method AND s.student = m.student AND s.teacher_set = m.teacher_set
ORDER BY m.student, m.method, teachers;
