select
    c.customer_key,
    c.name,
    c.segment,
    c.nation,
    count(o.order_key) as orders,
    coalesce(sum(o.total_price), 0) as revenue
from {{ ref('stg_customers') }} as c
left join {{ ref('stg_orders') }} as o on o.customer_key = c.customer_key
group by c.customer_key, c.name, c.segment, c.nation
