-- Claim 2 (Fig 1b): complementary knowledge is more concentrated (lower entropy) for weaker teachers.
-- Pearson correlation r of entropy (of the per-class positive flips) with delta_acc over trained pairs
-- that have an entropy (a pair without positive flips has none), with a 95% Fisher-z interval (the
-- fisher_low/high macros; NULL for fewer than 4 pairs). The claim is r > 0: the weaker the teacher
-- (delta_acc < 0), the lower the entropy. Pairs share teachers and students, so they are not independent
-- and the interval is optimistic (too narrow). Columns as in claim_1. Reads: pairs.
WITH t AS (
    SELECT entropy, delta_acc
    FROM pairs
    WHERE NOT teacher_is_random AND teacher <> student AND entropy IS NOT NULL
),
s AS (
    SELECT CASE WHEN isnan(corr(entropy, delta_acc)) THEN NULL ELSE corr(entropy, delta_acc) END AS r,
           count(*) AS n
    FROM t
)
SELECT
    '2' AS claim_id,
    'Complementary knowledge is more concentrated in few classes (lower entropy) for weaker teachers' AS claim,
    'Fig 1b' AS paper_ref,
    'entropy rises with delta_acc (weaker teachers: lower entropy)' AS paper_value,
    r AS value,
    fisher_low(r, n)  AS ci_low,
    fisher_high(r, n) AS ci_high,
    'r' AS unit,
    n,
    'pairs' AS n_unit,
    0.0::DOUBLE AS threshold,
    '>' AS direction,
    claim_verdict(r, fisher_low(r, n), fisher_high(r, n), 0.0::DOUBLE, '>') AS verdict,
    'Pearson r of entropy with delta_acc, Fisher-z interval; pairs share models, so the interval is optimistic'
        AS note
FROM s;
