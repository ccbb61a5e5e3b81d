"""Step-reward models: one service that scores turns (SPA progress c_t, iStar / StepAgent implicit r_t = beta * q_t,
StepAgent's discriminator r_t = clip(logit)) and, when online, learns from every RL batch. ``objectives`` (plain tensor functions), ``service`` (in-process model
and Ray actor), ``trainer_hooks`` (what the ``spa`` trainer mode calls)."""
