-- Figure 1b: how concentrated the complementary knowledge is, against how much there is.
-- entropy = -sum_k q_k ln q_k over the per-class shares q_k of a pair's positive flips (nats);
-- entropy_uniform = ln(num_classes), the value for flips spread evenly over all classes. Low entropy
-- means the teacher's extra knowledge sits in a few classes. Pairs without positive flips have no entropy
-- and are left out. Reads: pairs.
SELECT
    teacher,
    student,
    teacher_is_random,
    100 * rho_pos      AS rho_pos_pct,
    100 * delta_acc    AS delta_acc_pp,
    entropy,
    ln(num_classes)    AS entropy_uniform
FROM pairs
WHERE entropy IS NOT NULL AND teacher <> student
ORDER BY teacher_is_random, rho_pos, teacher, student;
