"""Teleop helpers: key mapping and jog math (ROS-free), and recording sim demos (`record_sim`)."""
