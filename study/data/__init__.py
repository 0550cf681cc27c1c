"""The data stage: dataset files read and checked by content, and the splits a study
trains on (numpy only; torch tensors are made in ``load``)."""
