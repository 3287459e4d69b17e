"""Pieces shared by TrustPPO and TrustTRPO: KL, losses, trust-region maths, schedules and checks."""
