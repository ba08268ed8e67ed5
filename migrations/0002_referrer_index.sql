-- The points API counts a user's referees (GET /v1/users/{address}): look them up by referrer
-- instead of scanning every binding.
CREATE INDEX state_referral_by_referrer ON walpoints.state_referral (referrer, referee);
