-- The publication walpoints streams (walpoints setup creates it too; run this by hand when the
-- walpoints role may not create publications). Name it as source.publication says.
CREATE PUBLICATION walpoints FOR TABLE trades, positions, referral_relations;
