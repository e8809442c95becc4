"""xArm6 facts (limits, kinematics) and driver backends."""
