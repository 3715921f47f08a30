-- Claim 6 (Fig 7, Tab 3): KL+DP keeps what the student knew and routes the teacher's knowledge to it.
-- 6a: mean over the pairs both ran on of loss(KL-Dist) - loss(KL+DP) (knowledge loss = share of eval
--     samples right before and wrong after; runs of a pair averaged), 95% t interval over pairs; claim > 0.
-- 6b_pos / 6b_neg: mean over supervised KL+DP pairs of teacher_share_pos (share of positive-flip training
--     samples routed to the teacher; paper ~72%) and teacher_share_neg (negative flips; paper ~9%), 95% t
--     interval over pairs clipped to [0, 100] (a share cannot leave it), against 50%: most positive flips go to the teacher (> 50%), few negative flips
--     do (< 50%). In percentage points / percent. No survivorship: failed or diverged runs count as harmed in
--     6a (paper_outcomes; n_failed counts them; they route nothing, so 6b leaves them out). Columns as in
--     claim_1 plus n_failed. Reads: transfers and failures (paper_outcomes).
WITH loss_diff AS (
    SELECT k.loss - d.loss AS diff, k.n_failed + d.n_failed AS n_failed
    FROM per_pair_outcomes k
    JOIN per_pair_outcomes d ON d.method = 'kl_dp' AND d.student = k.student AND d.teacher = k.teacher
    WHERE k.method = 'kl'
),
a AS (
    SELECT 100 * avg(diff) AS value,
           100 * mean_ci_low(avg(diff), stddev_samp(diff), count(*))  AS ci_low,
           100 * mean_ci_high(avg(diff), stddev_samp(diff), count(*)) AS ci_high,
           count(*) AS n, coalesce(sum(n_failed), 0) AS n_failed
    FROM loss_diff
),
routing AS (
    SELECT share_pos, share_neg FROM per_pair_outcomes WHERE method = 'kl_dp'
),
b AS (
    SELECT 100 * avg(share_pos) AS pos_value,
           greatest(0, 100 * mean_ci_low(avg(share_pos), stddev_samp(share_pos), count(share_pos)))  AS pos_lo,
           least(100, 100 * mean_ci_high(avg(share_pos), stddev_samp(share_pos), count(share_pos))) AS pos_hi,
           count(share_pos) AS pos_n,
           100 * avg(share_neg) AS neg_value,
           greatest(0, 100 * mean_ci_low(avg(share_neg), stddev_samp(share_neg), count(share_neg)))  AS neg_lo,
           least(100, 100 * mean_ci_high(avg(share_neg), stddev_samp(share_neg), count(share_neg))) AS neg_hi,
           count(share_neg) AS neg_n
    FROM routing
),
rows_ AS (
    SELECT '6a' AS claim_id,
           '{kl_dp} loses less of what the student knew than {kl}' AS claim,
           'Fig 7' AS paper_ref,
           'KL+DP points sit near zero loss; KL-Dist loses much more' AS paper_value,
           value, ci_low, ci_high, 'pp' AS unit, n, 'pairs' AS n_unit, 0.0::DOUBLE AS threshold, '>' AS direction,
           'mean paired difference loss(kl) - loss(kl_dp), t interval over pairs' AS note, n_failed
    FROM a
    UNION ALL
    SELECT '6b_pos', '{kl_dp} routes most positive-flip samples to the teacher', 'Tab 3', '~72%',
           pos_value, pos_lo, pos_hi, '%', pos_n, 'pairs', 50.0::DOUBLE, '>',
           'mean teacher_share_pos over pairs, t interval', 0
    FROM b
    UNION ALL
    SELECT '6b_neg', '{kl_dp} routes few negative-flip samples to the teacher', 'Tab 3', '~9%',
           neg_value, neg_lo, neg_hi, '%', neg_n, 'pairs', 50.0::DOUBLE, '<',
           'mean teacher_share_neg over pairs, t interval', 0
    FROM b
)
SELECT claim_id, claim, paper_ref, paper_value, value, ci_low, ci_high, unit, n, n_unit, threshold, direction,
       claim_verdict(value, ci_low, ci_high, threshold, direction) AS verdict, note, n_failed
FROM rows_
ORDER BY CASE claim_id WHEN '6a' THEN 1 WHEN '6b_pos' THEN 2 ELSE 3 END;
