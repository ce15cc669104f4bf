"""trilemma: train, sample and measure image generator families side by side."""
