-- Claim 7 (Tab 4): sequential multi-teacher transfer is at least as good as the best single teacher, and
-- the soup is the worst multi-teacher mode.
-- Units: (method, student, set of teachers) with multi-teacher runs (study_part 'multi_teacher'). Per unit:
-- 7a: delta(sequential) - max over the set's single-teacher baselines (the multi-teacher stage's own runs,
--     study_part 'multi_teacher', mode 'single'; the main study's single transfers when a set has none);
-- 7b: delta(soup) - min(delta of the other multi-teacher modes: sequential, parallel).
-- Runs of one mode (or teacher) are averaged. value = mean over units of the difference, in percentage
-- points; with two or more units the 95% t interval over units; with exactly one unit, the paired 95%
-- score interval (Tango, as zoo_study/stats.py, solved by bisection with the tango_z macro) of the
-- difference in accuracy between the two models on the same eval samples, from their per-sample
-- predictions (each side a single run); without them the interval is NULL ('not enough power to tell').
-- 7a holds when the interval is > 0, 7b when it is < 0. Columns as in claim_1.
-- Reads: transfers (paper_transfers: pretrained students, no mixup), transfer_predictions.
WITH RECURSIVE multi AS (
    SELECT method_key(method, hparams_json) AS method, student, list_sort(teachers) AS teacher_set, mode,
           avg(delta_last) AS d, count(*) AS n_runs, min(job_id) AS job_id
    FROM paper_transfers
    WHERE study_part = 'multi_teacher' AND mode IN ('sequential', 'parallel', 'soup')
    GROUP BY method_key(method, hparams_json), student, list_sort(teachers), mode
),
sets AS (
    SELECT DISTINCT method, student, teacher_set FROM multi
),
single_all AS (
    SELECT s.method, s.student, s.teacher_set, t.study_part AS source, t.teacher,
           avg(t.delta_last) AS d, count(*) AS n_runs, min(t.job_id) AS job_id
    FROM sets s
    JOIN paper_transfers t
      ON t.study_part IN ('multi_teacher', 'transfer') AND t.mode = 'single'
     AND t.student = s.student
     AND method_key(t.method, t.hparams_json) = s.method
     AND list_contains(s.teacher_set, t.teacher)
    GROUP BY s.method, s.student, s.teacher_set, t.study_part, t.teacher
),
single AS (
    SELECT a.*
    FROM single_all a
    WHERE a.source = 'multi_teacher'
       OR NOT EXISTS (SELECT 1 FROM single_all b
                      WHERE b.source = 'multi_teacher' AND b.method = a.method
                        AND b.student = a.student AND b.teacher_set = a.teacher_set)
),
best_single AS (
    SELECT method, student, teacher_set, max(d) AS d,
           arg_max(CASE WHEN n_runs = 1 THEN job_id END, d) AS job_id
    FROM single
    GROUP BY method, student, teacher_set
),
units AS (  -- one row per claim and unit: the difference and the two jobs behind it (single runs only)
    SELECT '7a' AS claim_id, q.method, q.student, q.teacher_set, q.d - b.d AS diff,
           CASE WHEN q.n_runs = 1 THEN q.job_id END AS job_a, b.job_id AS job_b
    FROM multi q
    JOIN best_single b USING (method, student, teacher_set)
    WHERE q.mode = 'sequential'
    UNION ALL
    SELECT '7b', s.method, s.student, s.teacher_set, s.d - o.d,
           CASE WHEN s.n_runs = 1 THEN s.job_id END, o.job_id
    FROM multi s
    JOIN (SELECT method, student, teacher_set, min(d) AS d,
                 arg_min(CASE WHEN n_runs = 1 THEN job_id END, d) AS job_id
          FROM multi WHERE mode IN ('sequential', 'parallel')
          GROUP BY method, student, teacher_set) o USING (method, student, teacher_set)
    WHERE s.mode = 'soup'
),
claims(claim_id, claim, paper_value, direction, note) AS (
    VALUES ('7a', 'Sequential multi-teacher transfer is at least as good as the best single teacher',
            'sequential 0.97 / 0.65 / 1.04 vs best single 0.93 / 0.26 / 0.86 pp (XCiT-P16, Twins, PiT-B)', '>',
            'delta(sequential) - best single-teacher delta'),
           ('7b', 'The soup of single-teacher students is the worst multi-teacher mode',
            'soup 0.63 / 0.21 / 0.69 vs parallel 0.91 / 0.30 / 0.77 pp (XCiT-P16, Twins, PiT-B)', '<',
            'delta(soup) - min(delta(sequential), delta(parallel))')
),
agg AS (
    SELECT c.claim_id, avg(u.diff) AS m, stddev_samp(u.diff) AS sd, count(u.diff) AS n,
           min(u.job_a) AS job_a, min(u.job_b) AS job_b
    FROM claims c
    LEFT JOIN units u ON u.claim_id = c.claim_id
    GROUP BY c.claim_id
),
paired AS (  -- one unit: the two final models compared sample by sample
    SELECT a.claim_id,
           count(*) AS n_eval,
           count(*) FILTER (WHERE pa.pred_after = pa.label AND pb.pred_after <> pb.label) AS g,
           count(*) FILTER (WHERE pa.pred_after <> pa.label AND pb.pred_after = pb.label) AS l
    FROM agg a
    JOIN transfer_predictions pa ON pa.job_id = a.job_a
    JOIN transfer_predictions pb ON pb.job_id = a.job_b AND pb.sample_id = pa.sample_id
    WHERE a.n = 1
    GROUP BY a.claim_id
),
bisect(claim_id, it, lo_in, lo_out, hi_in, hi_out) AS (  -- as stats.paired_delta_ci: |Z(d)| <= z inside
    SELECT claim_id, 0, (g - l)::DOUBLE / n_eval, -1.0::DOUBLE, (g - l)::DOUBLE / n_eval, 1.0::DOUBLE
    FROM paired WHERE n_eval > 0
    UNION ALL
    SELECT b.claim_id, b.it + 1,
           CASE WHEN abs(tango_z(p.g, p.l, p.n_eval, (b.lo_in + b.lo_out) / 2)) <= z975()
                THEN (b.lo_in + b.lo_out) / 2 ELSE b.lo_in END,
           CASE WHEN abs(tango_z(p.g, p.l, p.n_eval, (b.lo_in + b.lo_out) / 2)) <= z975()
                THEN b.lo_out ELSE (b.lo_in + b.lo_out) / 2 END,
           CASE WHEN abs(tango_z(p.g, p.l, p.n_eval, (b.hi_in + b.hi_out) / 2)) <= z975()
                THEN (b.hi_in + b.hi_out) / 2 ELSE b.hi_in END,
           CASE WHEN abs(tango_z(p.g, p.l, p.n_eval, (b.hi_in + b.hi_out) / 2)) <= z975()
                THEN b.hi_out ELSE (b.hi_in + b.hi_out) / 2 END
    FROM bisect b
    JOIN paired p ON p.claim_id = b.claim_id
    WHERE b.it < 64
),
score_ci AS (
    SELECT b.claim_id, p.n_eval,
           CASE WHEN abs(tango_z(p.g, p.l, p.n_eval, -1.0)) <= z975() THEN -1.0 ELSE b.lo_in END AS lo,
           CASE WHEN abs(tango_z(p.g, p.l, p.n_eval, 1.0)) <= z975() THEN 1.0 ELSE b.hi_in END AS hi
    FROM bisect b
    JOIN paired p ON p.claim_id = b.claim_id
    WHERE b.it = 64
),
rows_ AS (
    SELECT c.claim_id, c.claim, c.paper_value, c.direction,
           100 * a.m AS value,
           100 * CASE WHEN a.n >= 2 THEN mean_ci_low(a.m, a.sd, a.n) ELSE s.lo END  AS ci_low,
           100 * CASE WHEN a.n >= 2 THEN mean_ci_high(a.m, a.sd, a.n) ELSE s.hi END AS ci_high,
           CASE WHEN a.n = 1 AND s.n_eval IS NOT NULL THEN s.n_eval ELSE a.n END AS n,
           CASE WHEN a.n = 1 AND s.n_eval IS NOT NULL THEN 'eval samples (one student)'
                ELSE 'students x teacher sets' END AS n_unit,
           c.note || CASE WHEN a.n >= 2 THEN ', t interval over ' || a.n || ' units'
                          WHEN a.n = 1 AND s.n_eval IS NOT NULL
                               THEN '; one student: paired score interval of the two models on the same eval samples'
                          WHEN a.n = 1 THEN '; one student and no per-sample predictions of both runs: n=1, no interval'
                          ELSE '' END AS note
    FROM claims c
    JOIN agg a ON a.claim_id = c.claim_id
    LEFT JOIN score_ci s ON s.claim_id = c.claim_id
)
SELECT
    claim_id, claim, 'Tab 4' AS paper_ref, paper_value, value, ci_low, ci_high, 'pp' AS unit, n, n_unit,
    0.0::DOUBLE AS threshold, direction,
    claim_verdict(value, ci_low, ci_high, 0.0::DOUBLE, direction) AS verdict,
    note
FROM rows_
ORDER BY claim_id;
