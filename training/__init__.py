"""dcam.training: multi-class DCAM teacher-student distillation, evaluation and the manifest."""
