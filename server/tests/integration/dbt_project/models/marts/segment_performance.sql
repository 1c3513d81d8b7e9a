select
    r.segment,
    t.owner,
    sum(r.revenue) as revenue,
    t.target_revenue,
    sum(r.revenue) >= t.target_revenue as on_target
from {{ ref('customer_revenue') }} as r
join {{ ref('segment_targets') }} as t on t.segment = r.segment
group by r.segment, t.owner, t.target_revenue
