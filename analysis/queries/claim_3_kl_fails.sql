-- Claim 3 (Fig 4a/4b, §5.1): plain KL distillation fails often, especially from weaker teachers.
-- 3a: KL success rate = share of KL single-teacher pairs with delta_last > 0 (runs of a pair averaged),
--     with its 95% Wilson interval over pairs; the claim is that it is below 50%.
-- 3b: Pearson r of KL's delta_last with the pair's delta_acc (trained, scored pairs), 95% Fisher-z
--     interval; the claim is r > 0 (weaker teachers hurt more). Pairs share models: optimistic interval.
-- No survivorship: failed or diverged KL runs count (paper_outcomes), as harmed (a student broken to
-- chance) and a pair with a failed run is never a success; n_failed says how many runs were counted so.
-- Columns as in claim_1 plus n_failed. Reads: transfers and failures (paper_outcomes), pairs.
WITH kl AS (
    SELECT student, teacher, delta_last, n_failed FROM per_pair_outcomes WHERE method = 'kl'
),
rate AS (
    SELECT count(*) FILTER (WHERE delta_last > 0 AND n_failed = 0) AS k, count(*) AS n,
           coalesce(sum(n_failed), 0) AS n_failed
    FROM kl
),
cor AS (
    SELECT CASE WHEN isnan(corr(k.delta_last, p.delta_acc)) THEN NULL ELSE corr(k.delta_last, p.delta_acc) END AS r,
           count(*) AS n, coalesce(sum(k.n_failed), 0) AS n_failed
    FROM kl k
    JOIN pairs p ON p.teacher = k.teacher AND p.student = k.student AND NOT p.teacher_is_random
),
rows_ AS (
    SELECT '3a' AS claim_id,
           '{kl} fails often: fewer than half of its transfers end above the student''s start' AS claim,
           'Fig 4a, §5.1' AS paper_ref,
           '~32.5% success (authors'' leaderboard: 32.5%)' AS paper_value,
           CASE WHEN n > 0 THEN 100.0 * k / n END AS value,
           100 * wilson_low(k, n)  AS ci_low,
           100 * wilson_high(k, n) AS ci_high,
           '%' AS unit, n, 'pairs' AS n_unit, 50.0::DOUBLE AS threshold, '<' AS direction, n_failed,
           'share of pairs with delta_last > 0, Wilson interval' AS note
    FROM rate
    UNION ALL
    SELECT '3b',
           '{kl} fails especially from weaker teachers: its delta rises with delta_acc',
           'Fig 4b, §5.1',
           'KL-Dist deltas negative for weaker teachers',
           r, fisher_low(r, n), fisher_high(r, n),
           'r', n, 'pairs', 0.0::DOUBLE, '>', n_failed,
           'Pearson r of delta_last with delta_acc, Fisher-z interval; pairs share models, so it is optimistic'
    FROM cor
)
SELECT claim_id, claim, paper_ref, paper_value, value, ci_low, ci_high, unit, n, n_unit, threshold, direction,
       claim_verdict(value, ci_low, ci_high, threshold, direction) AS verdict, note, n_failed
FROM rows_
ORDER BY claim_id;
