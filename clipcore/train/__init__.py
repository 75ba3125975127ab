"""The pretrain stage: contrastive losses, batches, the (distributed) training loop and its end-to-end function."""
