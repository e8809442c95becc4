"""The ROS layer's in-process graphs and the commands that run them: the launch description
(`launch`), the sim graph of demo and eval (`sim_graph`), recording sim demonstrations
(`record_sim`)."""
