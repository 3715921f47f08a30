-- Figure 4b (also Fig 9/10): transfer delta against the teacher-student performance difference.
-- Single-teacher transfers are joined with their pair score for delta_acc, then binned into n_bins
-- equal-width bins spanning the observed delta_acc range (the same bins for every method). Per bin and
-- method: the mean of the top 25% transfer deltas (delta_last; the best ceil(n/4) pairs, at least one),
-- as in the paper. Repeated runs of one (method, student, teacher) are averaged first.
-- Intervals: top25_ci_low/high_pp = 95% t interval over the top pairs, or, when the top quarter is one pair,
-- that pair's own interval (its run's paired score interval; over several seeds, the t interval over them);
-- mean_ci_low/high_pp = the t interval over all pairs of the bin (NULL with one pair). Picking the top
-- quarter favours lucky draws, so the top-25% mean is an optimistic summary and its interval only says how
-- spread the chosen pairs are; n_sig_positive counts the bin's pairs whose delta is significantly > 0
-- (McNemar p < 0.05, every run).
-- Transfers whose pair was not scored have no delta_acc and are left out.
-- Reads: transfers (per_pair: paper_transfers, pretrained students, no mixup, runs of a pair averaged), pairs.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH params AS (
    SELECT 6 AS n_bins   -- number of equal-width delta_acc bins; change it here
),
runs AS (
    SELECT method, student, teacher, delta_last, sig_pos, pair_ci_low, pair_ci_high FROM per_pair
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
    100 * CASE WHEN count(*) FILTER (WHERE rk <= ceil(n_in_bin / 4.0)) = 1
               THEN min(pair_ci_low) FILTER (WHERE rk = 1)
               ELSE mean_ci_low(avg(delta_last) FILTER (WHERE rk <= ceil(n_in_bin / 4.0)),
                                stddev_samp(delta_last) FILTER (WHERE rk <= ceil(n_in_bin / 4.0)),
                                count(*) FILTER (WHERE rk <= ceil(n_in_bin / 4.0))) END  AS top25_ci_low_pp,
    100 * CASE WHEN count(*) FILTER (WHERE rk <= ceil(n_in_bin / 4.0)) = 1
               THEN min(pair_ci_high) FILTER (WHERE rk = 1)
               ELSE mean_ci_high(avg(delta_last) FILTER (WHERE rk <= ceil(n_in_bin / 4.0)),
                                 stddev_samp(delta_last) FILTER (WHERE rk <= ceil(n_in_bin / 4.0)),
                                 count(*) FILTER (WHERE rk <= ceil(n_in_bin / 4.0))) END AS top25_ci_high_pp,
    100 * avg(delta_last)                       AS mean_delta_pp,
    100 * mean_ci_low(avg(delta_last), stddev_samp(delta_last), count(*))  AS mean_ci_low_pp,
    100 * mean_ci_high(avg(delta_last), stddev_samp(delta_last), count(*)) AS mean_ci_high_pp,
    count(*) FILTER (WHERE sig_pos)             AS n_sig_positive
FROM ranked
GROUP BY method, bin, lo, hi, n_bins
ORDER BY method, bin;
