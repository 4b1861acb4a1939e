"""LeJEPA pretraining: configs, data and views, the training loop, publishing."""
