"""Cases: lifecycle, routing by responsibility, deadlines, escalation, evaluation."""
