"""The reference story: a Stripe webhook pipeline whose jobs move from RQ to Procrastinate."""
