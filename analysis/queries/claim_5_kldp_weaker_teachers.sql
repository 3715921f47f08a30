-- Claim 5 (Fig 4b, §5.1): KL+DP gains even from weaker teachers.
-- Mean delta_last of supervised KL+DP ('kl_dp') over the pairs whose teacher is weaker than the student
-- (scored pair with delta_acc < 0, trained teacher; runs of a pair averaged first), with its 95% t interval
-- over those pairs; the claim is > 0. In percentage points. Columns as in claim_1. Reads: transfers (paper_transfers: pretrained students, no mixup), pairs.
-- No survivorship: failed or diverged runs count as harmed (paper_outcomes); n_failed counts them.
WITH weak AS (
    SELECT t.delta_last, t.n_failed
    FROM per_pair_outcomes t
    JOIN pairs p ON p.teacher = t.teacher AND p.student = t.student
    WHERE t.method = 'kl_dp' AND p.delta_acc < 0 AND NOT p.teacher_is_random
),
agg AS (
    SELECT 100 * avg(delta_last) AS value,
           100 * mean_ci_low(avg(delta_last), stddev_samp(delta_last), count(*))  AS ci_low,
           100 * mean_ci_high(avg(delta_last), stddev_samp(delta_last), count(*)) AS ci_high,
           count(*) AS n, coalesce(sum(n_failed), 0) AS n_failed
    FROM weak
)
SELECT
    '5' AS claim_id,
    '{kl_dp} transfers knowledge even from weaker teachers (delta_acc < 0)' AS claim,
    'Fig 4b, §5.1' AS paper_ref,
    'positive deltas for weaker teachers' AS paper_value,
    value, ci_low, ci_high,
    'pp' AS unit,
    n,
    'pairs' AS n_unit,
    0.0::DOUBLE AS threshold,
    '>' AS direction,
    claim_verdict(value, ci_low, ci_high, 0.0::DOUBLE, '>') AS verdict,
    'mean delta_last over pairs with a weaker teacher, t interval' AS note,
    n_failed
FROM agg;
