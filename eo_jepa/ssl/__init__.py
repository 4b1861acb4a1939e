"""LeJEPA: the SIGReg statistic, the multi-view objective and the projector head."""
