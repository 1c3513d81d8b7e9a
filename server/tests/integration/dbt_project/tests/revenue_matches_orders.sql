-- The revenue of all customers equals the total price of all orders (a failing test returns rows).
select r.revenue, o.revenue
from (select sum(revenue) as revenue from {{ ref('customer_revenue') }}) as r
cross join (select sum(o_totalprice) as revenue from {{ source('tpch', 'orders') }}) as o
where abs(r.revenue - o.revenue) > 0.01
