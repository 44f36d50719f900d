-- Fenced journeys. lease_epoch counts the takings of a journey's lease: each
-- claim or take-over increments it, the owner remembers the epoch it took,
-- and every write the owner makes (a step's transition, a lease renewal, a
-- step's recorded input) names that epoch in its WHERE. An owner that
-- stalled while its lease was taken over writes nothing when it wakes.
ALTER TABLE applications ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
-- The credit step's input (credit.v1.DecisionInput, hex-encoded protobuf),
-- recorded before its first DecideApplication call: every retry and every
-- resume sends exactly this body under the step's request id.
ALTER TABLE applications ADD COLUMN credit_input TEXT NOT NULL DEFAULT '';
-- Who abandoned the journey and why, recorded with ABANDONING: the
-- compensation (ReleaseFunding) sends it, the same body on every continuation.
ALTER TABLE applications ADD COLUMN abandon_reason TEXT NOT NULL DEFAULT '';
