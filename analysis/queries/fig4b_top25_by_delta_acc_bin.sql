-- Figure 4b (also Fig 9/10): transfer delta against the teacher-student performance difference.
-- Single-teacher transfers are joined with their pair score for delta_acc, then binned into n_bins
-- equal-width bins spanning the observed delta_acc range (the same bins for every method). Per bin and
-- method: the mean of the top 25% transfer deltas (delta_last; the best ceil(n/4) pairs, at least one),
-- as in the paper. Repeated runs of one (method, student, teacher) are averaged first.
-- Transfers whose pair was not scored have no delta_acc and are left out.
-- Reads: transfers, pairs.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH params AS (
    SELECT 6 AS n_bins   -- number of equal-width delta_acc bins; change it here
),
runs AS (
    SELECT method_key(method, hparams_json) AS method, student, teacher, avg(delta_last) AS delta_last
    FROM transfers
    WHERE study_part = 'transfer' AND mode = 'single'
    GROUP BY ALL
),
joined AS (
    SELECT r.*, p.delta_acc
    FROM runs r
    JOIN pairs p ON p.teacher = r.teacher AND p.student = r.student
),
span AS (
    SELECT min(delta_acc) AS lo, max(delta_acc) AS hi FROM joined
),
binned AS (
    SELECT
        j.*,
        s.lo,
        s.hi,
        p.n_bins,
        CASE WHEN s.hi > s.lo
             THEN least(p.n_bins - 1, floor((j.delta_acc - s.lo) / (s.hi - s.lo) * p.n_bins))::INTEGER
             ELSE 0 END AS bin
    FROM joined j, span s, params p
),
ranked AS (
    SELECT
        *,
        row_number() OVER (PARTITION BY method, bin ORDER BY delta_last DESC, student, teacher) AS rk,
        count(*) OVER (PARTITION BY method, bin) AS n_in_bin
    FROM binned
)
SELECT
    method,
    bin,
    100 * (lo + (hi - lo) * bin / n_bins)       AS bin_lo_pp,
    100 * (lo + (hi - lo) * (bin + 1) / n_bins) AS bin_hi_pp,
    100 * (lo + (hi - lo) * (bin + 0.5) / n_bins) AS bin_mid_pp,
    max(n_in_bin)                               AS n_pairs,
    count(*) FILTER (WHERE rk <= ceil(n_in_bin / 4.0)) AS n_top,
    100 * avg(delta_last) FILTER (WHERE rk <= ceil(n_in_bin / 4.0)) AS top25_mean_delta_pp,
    100 * avg(delta_last)                       AS mean_delta_pp
FROM ranked
GROUP BY method, bin, lo, hi, n_bins
ORDER BY method, bin;
