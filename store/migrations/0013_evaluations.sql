-- Monthly evaluation results (cases/evaluation.py), as the case API last computed them: the
-- dashboards' on-time closure rates and ranking read them. One row per month, scope (unit or
-- district) and name; a month's rows are replaced together.
create table evaluations (
    month                   text not null check (month ~ '^[0-9]{4}-[0-9]{2}$'),
    scope                   text not null check (scope in ('unit', 'district')),
    name                    text not null,
    rank                    integer not null,
    cases                   integer not null,
    closure_rate            double precision,
    on_time_closure_rate    double precision,
    disposal_rate           double precision,
    on_time_disposal_rate   double precision,
    accurate_dispatch_rate  double precision,
    rework_rate             double precision,
    mean_disposal_hours     double precision,
    computed_at             timestamptz not null default now(),
    primary key (month, scope, name)
);
