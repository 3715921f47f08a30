-- Table 4: multi-teacher transfer against the single teachers it combines.
-- One row per (student, method, set of teachers) that has a multi-teacher run. single_*: mean / min / max
-- delta_last of single-teacher transfers of the same student and method from each teacher in the set
-- (runs averaged per teacher): the multi-teacher stage's own baselines (study_part 'multi_teacher', mode
-- 'single', same epochs) when the set has any, else the main study's (study_part 'transfer');
-- single_source says which. sequential_pp / parallel_pp / soup_pp: delta_last of the multi-teacher runs of
-- that mode (mean over runs, e.g. several orders or seeds; n_* counts them). Intervals (95%, *_ci_low/high_pp):
-- a single run's paired score interval (zoo_study/stats.py), the t interval over runs when there are
-- several; single_mean over the teachers (t), single_max = the best teacher's. beats_best_single:
-- sequential > single_max (a point comparison; see the Claims section for its interval).
-- Deltas in percentage points. Reads: transfers (paper_transfers: pretrained students, no mixup).
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH multi AS (
    SELECT
        method_key(method, hparams_json) AS method,
        student,
        list_sort(teachers)              AS teacher_set,
        mode,
        avg(delta_last)                  AS delta_last,
        CASE WHEN count(*) = 1 THEN min(delta_ci_low)
             ELSE mean_ci_low(avg(delta_last), stddev_samp(delta_last), count(*)) END  AS ci_low,
        CASE WHEN count(*) = 1 THEN min(delta_ci_high)
             ELSE mean_ci_high(avg(delta_last), stddev_samp(delta_last), count(*)) END AS ci_high,
        count(*)                         AS n_runs
    FROM paper_transfers
    WHERE study_part = 'multi_teacher' AND mode IN ('sequential', 'parallel', 'soup')
    GROUP BY method_key(method, hparams_json), student, list_sort(teachers), mode
),
sets AS (
    SELECT DISTINCT method, student, teacher_set FROM multi
),
single_all AS (
    SELECT s.method, s.student, s.teacher_set, t.study_part AS source, t.teacher,
           avg(t.delta_last) AS delta_last,
           CASE WHEN count(*) = 1 THEN min(t.delta_ci_low)
                ELSE mean_ci_low(avg(t.delta_last), stddev_samp(t.delta_last), count(*)) END  AS ci_low,
           CASE WHEN count(*) = 1 THEN min(t.delta_ci_high)
                ELSE mean_ci_high(avg(t.delta_last), stddev_samp(t.delta_last), count(*)) END AS ci_high
    FROM sets s
    JOIN paper_transfers t
      ON t.study_part IN ('multi_teacher', 'transfer') AND t.mode = 'single'
     AND t.student = s.student
     AND method_key(t.method, t.hparams_json) = s.method
     AND list_contains(s.teacher_set, t.teacher)
    GROUP BY s.method, s.student, s.teacher_set, t.study_part, t.teacher
),
single AS (  -- the multi-teacher stage's baselines when the set has any
    SELECT a.*
    FROM single_all a
    WHERE a.source = 'multi_teacher'
       OR NOT EXISTS (SELECT 1 FROM single_all b
                      WHERE b.source = 'multi_teacher' AND b.method = a.method
                        AND b.student = a.student AND b.teacher_set = a.teacher_set)
),
single_stats AS (
    SELECT method, student, teacher_set, any_value(source) AS source,
           count(*) AS n_single, avg(delta_last) AS mean_d, min(delta_last) AS min_d, max(delta_last) AS max_d,
           mean_ci_low(avg(delta_last), stddev_samp(delta_last), count(*))  AS mean_lo,
           mean_ci_high(avg(delta_last), stddev_samp(delta_last), count(*)) AS mean_hi,
           arg_max(ci_low, delta_last)  AS max_lo,
           arg_max(ci_high, delta_last) AS max_hi
    FROM single
    GROUP BY method, student, teacher_set
),
modes AS (
    SELECT
        method, student, teacher_set,
        max(delta_last) FILTER (WHERE mode = 'sequential') AS seq_d,
        max(ci_low)     FILTER (WHERE mode = 'sequential') AS seq_lo,
        max(ci_high)    FILTER (WHERE mode = 'sequential') AS seq_hi,
        max(n_runs)     FILTER (WHERE mode = 'sequential') AS seq_n,
        max(delta_last) FILTER (WHERE mode = 'parallel')   AS par_d,
        max(ci_low)     FILTER (WHERE mode = 'parallel')   AS par_lo,
        max(ci_high)    FILTER (WHERE mode = 'parallel')   AS par_hi,
        max(n_runs)     FILTER (WHERE mode = 'parallel')   AS par_n,
        max(delta_last) FILTER (WHERE mode = 'soup')       AS soup_d,
        max(ci_low)     FILTER (WHERE mode = 'soup')       AS soup_lo,
        max(ci_high)    FILTER (WHERE mode = 'soup')       AS soup_hi,
        max(n_runs)     FILTER (WHERE mode = 'soup')       AS soup_n
    FROM multi
    GROUP BY method, student, teacher_set
)
SELECT
    m.student,
    m.method,
    array_to_string(m.teacher_set, ' + ') AS teachers,
    coalesce(s.n_single, 0)               AS n_single,
    s.source                              AS single_source,
    100 * s.mean_d                        AS single_mean_pp,
    100 * s.mean_lo                       AS single_mean_ci_low_pp,
    100 * s.mean_hi                       AS single_mean_ci_high_pp,
    100 * s.min_d                         AS single_min_pp,
    100 * s.max_d                         AS single_max_pp,
    100 * s.max_lo                        AS single_max_ci_low_pp,
    100 * s.max_hi                        AS single_max_ci_high_pp,
    100 * m.seq_d                         AS sequential_pp,
    100 * m.seq_lo                        AS sequential_ci_low_pp,
    100 * m.seq_hi                        AS sequential_ci_high_pp,
    100 * m.par_d                         AS parallel_pp,
    100 * m.par_lo                        AS parallel_ci_low_pp,
    100 * m.par_hi                        AS parallel_ci_high_pp,
    100 * m.soup_d                        AS soup_pp,
    100 * m.soup_lo                       AS soup_ci_low_pp,
    100 * m.soup_hi                       AS soup_ci_high_pp,
    coalesce(m.seq_n, 0)                  AS n_sequential,
    coalesce(m.par_n, 0)                  AS n_parallel,
    coalesce(m.soup_n, 0)                 AS n_soup,
    m.seq_d > s.max_d                     AS beats_best_single
FROM modes m
LEFT JOIN single_stats s
  ON s.method = m.method AND s.student = m.student AND s.teacher_set = m.teacher_set
ORDER BY m.student, m.method, teachers;
