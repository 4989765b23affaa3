"""The node's work loop: join (`bootstrap`), follow rounds (`daemon`), roll out and train
(`train_step`), build and upload a contribution (`contribution_step`, `p2p_client`)."""
