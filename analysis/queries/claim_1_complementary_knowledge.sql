-- Claim 1 (Fig 1a, §3): every trained pair has complementary knowledge above the random-teacher floor.
-- rho_pos = n_pos / n_samples per scored pair, with its 95% Wilson interval over the eval samples (the
-- wilson_low/high macros of analysis/db.py). value / ci_low / ci_high: the trained pair (teacher not random,
-- teacher <> student) with the smallest Wilson lower bound; threshold: the largest Wilson upper bound over
-- the random-teacher rows (the noise floor). holds when even that pair's lower bound clears the floor's
-- upper bound; 'no data' without trained pairs or without random-teacher rows. In percent.
-- Columns of every claim_* query: claim_id, claim, paper_ref, paper_value, value, ci_low, ci_high, unit, n,
-- n_unit, threshold, direction ('>' or '<': the claim's side of the threshold), verdict (claim_verdict()),
-- note. {method} in a claim is a method key, shown with its registry label. Reads: pairs.
WITH trained AS (
    SELECT teacher, student, n_samples, rho_pos,
           wilson_low(n_pos, n_samples)  AS lo,
           wilson_high(n_pos, n_samples) AS hi
    FROM pairs
    WHERE NOT teacher_is_random AND teacher <> student AND n_samples > 0
),
weakest AS (
    SELECT * FROM trained ORDER BY lo, rho_pos, teacher, student LIMIT 1
),
floor_rows AS (
    SELECT max(wilson_high(n_pos, n_samples)) AS hi, max(rho_pos) AS rho_max, count(*) AS n_random
    FROM pairs
    WHERE teacher_is_random AND n_samples > 0
),
row AS (
    SELECT
        100 * w.rho_pos AS value,
        100 * w.lo      AS ci_low,
        100 * w.hi      AS ci_high,
        w.n_samples     AS n,
        100 * f.hi      AS threshold,
        w.teacher, w.student, f.n_random, f.rho_max,
        (SELECT count(*) FROM trained) AS n_trained
    FROM floor_rows f
    LEFT JOIN weakest w ON true
)
SELECT
    '1' AS claim_id,
    'Every trained pair holds complementary knowledge (rho_pos) above the random-teacher noise floor' AS claim,
    'Fig 1a, §3' AS paper_ref,
    'rho_pos >= ~2% for every trained pair; random ResNet50 teacher ~0.03%' AS paper_value,
    value, ci_low, ci_high,
    '%' AS unit,
    n,
    'eval samples' AS n_unit,
    threshold,
    '>' AS direction,
    claim_verdict(value, ci_low, ci_high, threshold, '>') AS verdict,
    'weakest of ' || n_trained || ' trained pairs (' || coalesce(teacher || ' -> ' || student, 'none')
        || ', by Wilson lower bound) vs the highest Wilson upper bound of ' || n_random
        || ' random-teacher rows' AS note
FROM row;
