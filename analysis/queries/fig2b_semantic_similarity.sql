-- Figure 2b: are a teacher's areas of expertise semantically related classes?
-- Per X (top-X% classes: the smallest set of classes holding X% of a pair's positive flips), over trained
-- pairs whose set has at least two classes: the mean of sim_top (mean pairwise cosine similarity of the
-- set's class-name embeddings) with its 95% t interval over pairs, the mean of the same-size random-set
-- baseline (sim_random_mean) and of its per-pair 2.5-97.5% band, sim_top relative to the mean over all
-- class pairs (ratio_to_all; the paper's normalisation), how many pairs lie above their own random band,
-- and the exact super-class measure: the share of the set's class pairs in one super-class against its
-- chance level (NULL without super-classes). encoder names the text encoder (docs: lexical by default).
-- Reads: pair_semantics.
WITH p AS (
    SELECT *
    FROM pair_semantics
    WHERE NOT teacher_is_random AND teacher <> student AND sim_top IS NOT NULL
)
SELECT
    x_pct,
    encoder,
    count(*)                                                          AS n_pairs,
    round(avg(n_classes), 1)                                          AS mean_classes,
    avg(sim_top)                                                      AS sim_top,
    mean_ci_low(avg(sim_top), stddev_samp(sim_top), count(*))         AS sim_top_ci_low,
    mean_ci_high(avg(sim_top), stddev_samp(sim_top), count(*))        AS sim_top_ci_high,
    avg(sim_random_mean)                                              AS sim_random,
    avg(sim_random_low)                                               AS sim_random_low,
    avg(sim_random_high)                                              AS sim_random_high,
    avg(sim_all)                                                      AS sim_all,
    avg(sim_top) / nullif(avg(sim_all), 0)                            AS ratio_to_all,
    count(*) FILTER (WHERE sim_top > sim_random_high)                 AS n_above_random,
    100 * avg(same_super_share)                                       AS same_super_pct,
    100 * mean_ci_low(avg(same_super_share), stddev_samp(same_super_share), count(same_super_share))  AS same_super_ci_low_pct,
    100 * mean_ci_high(avg(same_super_share), stddev_samp(same_super_share), count(same_super_share)) AS same_super_ci_high_pct,
    100 * avg(same_super_chance)                                      AS same_super_chance_pct
FROM p
GROUP BY x_pct, encoder
ORDER BY encoder, x_pct;
