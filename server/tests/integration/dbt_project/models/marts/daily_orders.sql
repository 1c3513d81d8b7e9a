{{ config(materialized='incremental', unique_key='order_date') }}

-- Each run recomputes the days from the newest one already there: delete+insert by day.
select
    order_date,
    count(*) as orders,
    sum(total_price) as revenue
from {{ ref('stg_orders') }}
where order_date <= date '{{ var("orders_through") }}'
{% if is_incremental() %}
  and order_date >= (select max(order_date) from {{ this }})
{% endif %}
group by order_date
