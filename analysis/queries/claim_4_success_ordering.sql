-- Claim 4 (Fig 4a): success rates order KL+DP > XE-KL+MCL > XE-KL > KL-Dist (paper 92.5%, ~80%, ~40%,
-- ~32.5%). One row per adjacent comparison (better method a, worse method b): the mean over the pairs
-- (student, teacher) both methods ran on of the paired difference delta_last(a) - delta_last(b) (runs of a
-- pair averaged first), with its 95% t interval over those pairs (mean_ci_low/high); the claim is > 0.
-- The paired difference in delta has more power than comparing two success rates. In percentage points.
-- No survivorship: failed or diverged runs count as harmed (paper_outcomes); n_failed counts them.
-- Columns as in claim_1 plus n_failed. Reads: transfers and failures (paper_outcomes).
WITH cmp(claim_id, a, b, paper_value) AS (
    VALUES ('4a', 'kl_dp', 'xe_kl_mcl', '92.5% vs ~80% success'),
           ('4b', 'xe_kl_mcl', 'xe_kl', '~80% vs ~40% success'),
           ('4c', 'xe_kl', 'kl', '~40% vs ~32.5% success')
),
diffs AS (
    SELECT c.claim_id, pa.delta_last - pb.delta_last AS diff, pa.n_failed + pb.n_failed AS n_failed
    FROM cmp c
    JOIN per_pair_outcomes pa ON pa.method = c.a
    JOIN per_pair_outcomes pb ON pb.method = c.b AND pb.student = pa.student AND pb.teacher = pa.teacher
),
agg AS (
    SELECT c.claim_id, c.a, c.b, c.paper_value,
           100 * avg(d.diff) AS value,
           100 * mean_ci_low(avg(d.diff), stddev_samp(d.diff), count(d.diff))  AS ci_low,
           100 * mean_ci_high(avg(d.diff), stddev_samp(d.diff), count(d.diff)) AS ci_high,
           count(d.diff) AS n, coalesce(sum(d.n_failed), 0) AS n_failed
    FROM cmp c
    LEFT JOIN diffs d ON d.claim_id = c.claim_id
    GROUP BY c.claim_id, c.a, c.b, c.paper_value
)
SELECT
    claim_id,
    '{' || a || '} transfers better than {' || b || '} on the same pairs' AS claim,
    'Fig 4a' AS paper_ref,
    paper_value,
    value, ci_low, ci_high,
    'pp' AS unit,
    n,
    'pairs' AS n_unit,
    0.0::DOUBLE AS threshold,
    '>' AS direction,
    claim_verdict(value, ci_low, ci_high, 0.0::DOUBLE, '>') AS verdict,
    'mean paired difference delta_last(' || a || ') - delta_last(' || b || '), t interval over pairs' AS note,
    n_failed
FROM agg
ORDER BY claim_id;
